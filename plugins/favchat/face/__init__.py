"""favchat's face pipeline: detectors with 5 landmarks (YuNet, RetinaFace, MTCNN, SCRFD), ArcFace alignment, face
backbones with multi-depth features (SFace ported to torch with its real weights, IResNet, timm) and `FaceEncoder`,
which turns a clip's faces into token groups for a video LLM.

Nothing heavy is imported here: `configs` is pydantic only; the other modules import torch, cv2 or onnxruntime.
"""
