"""What a LoRA adapter *is*: build base models, train, validate artifacts, talk to engines.

Knows nothing of tenants. Heavy ML imports (torch, transformers, peft) happen inside the functions
of `basemodel`, `tinymodel` and `train` only, so the serving path never loads them.
"""
