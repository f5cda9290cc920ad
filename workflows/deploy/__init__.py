"""Deployment: a trained model → one ONNX file: uint8 images (``N x crop x crop x 3``) in, class scores and class
index out.

The file is three graphs joined with ``onnx.compose``: the layout (NHWC → NCHW, one Transpose), the backbone as
the onnxruntime engine runs it (the engine folder's fp32 or int8 file, with normalization, the layer and pooling
inside: the same file ``extract`` uses, made or reused the same way) and the head. Linear heads (logistic
regression, ridge, linear SVM, LDA, with the pipeline's L2 normalization, scaler and PCA) fold into one
MatMul + Add; other classifiers go through skl2onnx; a fine-tuned checkpoint's own logits are softmaxed. Every
head is compared with scikit-learn on the training rows before anything is written: a conversion that disagrees
is refused, never shipped. The head stays fp32 in an int8 file.

The parts: ``entry`` (``export``: a model file of ``train`` or a checkpoint, told apart by name), ``options``
(``ExportOptions``), ``head`` (a scikit-learn head → an ONNX graph, checked against scikit-learn), ``graph`` (layout,
backbone and head joined as one model, its metadata, the file written), ``run`` (the order of it all: engines,
int8 calibration, the fp32/int8 comparison). Only ``head`` and ``graph`` receive scikit-learn objects; nothing here
imports ``classifiers`` but ``entry``.
"""
