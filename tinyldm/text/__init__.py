"""Text side of conditioning: CLIP's byte-level BPE tokenizer (tokenizer.py)."""
