"""Self-supervised multimodal pre-training of the ECG encoder (MEM + MLM + ETM, optional contrastive)."""
