"""torch-images: a YAML matrix of PyTorch × CUDA × cuDNN × Python into verified, tagged container images."""
