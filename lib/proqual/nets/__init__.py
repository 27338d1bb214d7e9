"""Networks, one file per architecture (quality net, ProFound-Conv, ProFound-ViT, classifier head)."""
