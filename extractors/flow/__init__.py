"""TV-L1 optical flow: batched PyTorch (GPU or CPU) and OpenCV (CPU) backends, presets,
TSN-style quantization."""
