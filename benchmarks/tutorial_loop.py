"""The loop a new user writes first (PyTorch's transfer-learning tutorial, features kept): the baseline that
`featurebank extract` is compared with. Run as a whole process: python benchmarks/tutorial_loop.py FOLDER MODEL

ImageFolder + torchvision transforms + DataLoader(batch_size=32) without workers + eager fp32, random weights,
the head replaced by Identity, features collected in a list. Prints: images seconds (imports included).
"""

import sys
import time

started = time.perf_counter()
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

folder, name = sys.argv[1], sys.argv[2]
tf = transforms.Compose(
    [
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)
data = datasets.ImageFolder(folder, tf)
model = torchvision.models.get_model(name, weights=None)
if hasattr(model, "fc"):
    model.fc = torch.nn.Identity()
else:
    model.classifier = torch.nn.Identity()
model.eval()
features = []
with torch.no_grad():
    for images, _ in DataLoader(data, batch_size=32):
        features.append(model(images))
print(len(data), round(time.perf_counter() - started, 3))
