"""LoRA trainers: a contract (base.py) and one file per trainer, registered through `register_trainers`."""
