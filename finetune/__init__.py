"""finetune: datasets, stage-0 pre-training and the two-stage LoRA fine-tune of the embedder."""
