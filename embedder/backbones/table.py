"""``featurebank backbones``: its torchvision rows recorded for one torchvision version, so that listing them builds
no model and imports no torch (building the 80 skeletons for their feature sizes took 20 s and more on 2 cores).
Another torchvision version, and timm, are described live (``backbones.describe_backbones``). After a torchvision
upgrade, ``tests/test_backbones.py``'s slow test of this table names the rows that changed: record them here."""

from __future__ import annotations

import fnmatch
import importlib.metadata

TORCHVISION = "0.29.1"  # the version these rows were read from

# name, features (the penultimate layer's size), default weights, weights names, resize, crop
ROWS = [
    ("alexnet", 4096, "AlexNet_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("convnext_base", 1024, "ConvNeXt_Base_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    ("convnext_large", 1536, "ConvNeXt_Large_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    ("convnext_small", 768, "ConvNeXt_Small_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 230, 224),
    ("convnext_tiny", 768, "ConvNeXt_Tiny_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 236, 224),
    ("densenet121", 1024, "DenseNet121_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("densenet161", 2208, "DenseNet161_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("densenet169", 1664, "DenseNet169_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("densenet201", 1920, "DenseNet201_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("efficientnet_b0", 1280, "EfficientNet_B0_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    (
        "efficientnet_b1",
        1280,
        "EfficientNet_B1_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        240,
    ),
    ("efficientnet_b2", 1408, "EfficientNet_B2_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 288, 288),
    ("efficientnet_b3", 1536, "EfficientNet_B3_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 320, 300),
    ("efficientnet_b4", 1792, "EfficientNet_B4_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 384, 380),
    ("efficientnet_b5", 2048, "EfficientNet_B5_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 456, 456),
    ("efficientnet_b6", 2304, "EfficientNet_B6_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 528, 528),
    ("efficientnet_b7", 2560, "EfficientNet_B7_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 600, 600),
    ("efficientnet_v2_l", 1280, "EfficientNet_V2_L_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 480, 480),
    ("efficientnet_v2_m", 1280, "EfficientNet_V2_M_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 480, 480),
    ("efficientnet_v2_s", 1280, "EfficientNet_V2_S_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 384, 384),
    ("googlenet", 1024, "GoogLeNet_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("inception_v3", 2048, "Inception_V3_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 342, 299),
    ("maxvit_t", 512, "MaxVit_T_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 224, 224),
    ("mnasnet0_5", 1280, "MNASNet0_5_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("mnasnet0_75", 1280, "MNASNet0_75_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    ("mnasnet1_0", 1280, "MNASNet1_0_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("mnasnet1_3", 1280, "MNASNet1_3_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    (
        "mobilenet_v2",
        1280,
        "MobileNet_V2_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "mobilenet_v3_large",
        1280,
        "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    ("mobilenet_v3_small", 1024, "MobileNet_V3_Small_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    (
        "regnet_x_16gf",
        2048,
        "RegNet_X_16GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_x_1_6gf",
        912,
        "RegNet_X_1_6GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_x_32gf",
        2520,
        "RegNet_X_32GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_x_3_2gf",
        1008,
        "RegNet_X_3_2GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_x_400mf",
        400,
        "RegNet_X_400MF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_x_800mf",
        672,
        "RegNet_X_800MF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_x_8gf",
        1920,
        "RegNet_X_8GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_128gf",
        7392,
        "RegNet_Y_128GF_Weights.IMAGENET1K_SWAG_E2E_V1",
        ("IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1", "DEFAULT"),
        384,
        384,
    ),
    (
        "regnet_y_16gf",
        3024,
        "RegNet_Y_16GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_1_6gf",
        888,
        "RegNet_Y_1_6GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_32gf",
        3712,
        "RegNet_Y_32GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_3_2gf",
        1512,
        "RegNet_Y_3_2GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_400mf",
        440,
        "RegNet_Y_400MF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_800mf",
        784,
        "RegNet_Y_800MF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "regnet_y_8gf",
        2016,
        "RegNet_Y_8GF_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    ("resnet101", 2048, "ResNet101_Weights.IMAGENET1K_V2", ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"), 256, 224),
    ("resnet152", 2048, "ResNet152_Weights.IMAGENET1K_V2", ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"), 256, 224),
    ("resnet18", 512, "ResNet18_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("resnet34", 512, "ResNet34_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("resnet50", 2048, "ResNet50_Weights.IMAGENET1K_V2", ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"), 256, 224),
    (
        "resnext101_32x8d",
        2048,
        "ResNeXt101_32X8D_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    ("resnext101_64x4d", 2048, "ResNeXt101_64X4D_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    (
        "resnext50_32x4d",
        2048,
        "ResNeXt50_32X4D_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    ("shufflenet_v2_x0_5", 1024, "ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("shufflenet_v2_x1_0", 1024, "ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("shufflenet_v2_x1_5", 1024, "ShuffleNet_V2_X1_5_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    ("shufflenet_v2_x2_0", 2048, "ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    ("squeezenet1_0", 512, "SqueezeNet1_0_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("squeezenet1_1", 512, "SqueezeNet1_1_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("swin_b", 1024, "Swin_B_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 238, 224),
    ("swin_s", 768, "Swin_S_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 246, 224),
    ("swin_t", 768, "Swin_T_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 232, 224),
    ("swin_v2_b", 1024, "Swin_V2_B_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 272, 256),
    ("swin_v2_s", 768, "Swin_V2_S_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 260, 256),
    ("swin_v2_t", 768, "Swin_V2_T_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 260, 256),
    ("vgg11", 4096, "VGG11_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("vgg11_bn", 4096, "VGG11_BN_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("vgg13", 4096, "VGG13_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("vgg13_bn", 4096, "VGG13_BN_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("vgg16", 4096, "VGG16_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "IMAGENET1K_FEATURES", "DEFAULT"), 256, 224),
    ("vgg16_bn", 4096, "VGG16_BN_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("vgg19", 4096, "VGG19_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    ("vgg19_bn", 4096, "VGG19_BN_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    (
        "vit_b_16",
        768,
        "ViT_B_16_Weights.IMAGENET1K_V1",
        ("IMAGENET1K_V1", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1", "DEFAULT"),
        256,
        224,
    ),
    ("vit_b_32", 768, "ViT_B_32_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    (
        "vit_h_14",
        1280,
        "ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1",
        ("IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1", "DEFAULT"),
        518,
        518,
    ),
    (
        "vit_l_16",
        1024,
        "ViT_L_16_Weights.IMAGENET1K_V1",
        ("IMAGENET1K_V1", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1", "DEFAULT"),
        242,
        224,
    ),
    ("vit_l_32", 1024, "ViT_L_32_Weights.IMAGENET1K_V1", ("IMAGENET1K_V1", "DEFAULT"), 256, 224),
    (
        "wide_resnet101_2",
        2048,
        "Wide_ResNet101_2_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
    (
        "wide_resnet50_2",
        2048,
        "Wide_ResNet50_2_Weights.IMAGENET1K_V2",
        ("IMAGENET1K_V1", "IMAGENET1K_V2", "DEFAULT"),
        256,
        224,
    ),
]


def recorded(version: str | None) -> list[dict] | None:
    """The rows, as ``describe_backbones`` returns them, when ``version`` is the one they were read from."""
    if version != TORCHVISION:
        return None
    keys = ("name", "features", "default_weights", "weights", "resize", "crop")
    return [dict(zip(keys, (n, f, d, list(w), r, c))) for n, f, d, w, r, c in ROWS]


def installed_torchvision() -> str | None:
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return None


def backbone_rows(source: str = "torchvision", pattern: str | None = None) -> list[dict]:
    """``describe_backbones(source, pattern)``: from the table when it was recorded for the installed torchvision
    (no torch imported), else built live."""
    rows = recorded(installed_torchvision()) if source == "torchvision" else None
    if rows is None:
        from .registry import describe_backbones

        return describe_backbones(source, pattern)
    return [r for r in rows if fnmatch.fnmatch(r["name"], pattern)] if pattern else rows


def backbones_text(rows: list[dict]) -> list[str]:
    """``backbone_rows``' rows for a person: torchvision's with their weights, timm's (no feature size without
    building the model) with their preprocessing."""
    if rows and "features" not in rows[0]:
        return [f"{'backbone':56} {'input':>7}  {'interpolation':13} mean"] + [
            f"{r['name']:56} {r['resize']:>3}/{r['crop']:<3}  {r['interpolation']:13} {r['mean']}" for r in rows
        ]
    lines = [f"{'backbone':24} {'features':>8}  {'input':>7}  weights (DEFAULT first)"]
    for r in rows:
        others = [w for w in r["weights"] if w != r["default_weights"].split(".")[1]]
        lines.append(
            f"{r['name']:24} {r['features']:>8}  {r['resize']:>3}/{r['crop']:<3}  "
            f"{r['default_weights'].split('.')[1]} {' '.join(others)}"
        )
    return lines
