"""Interop with the diffusers / original-DiT world: the name tables, weight conversion, diffusers' scheduler grids
and export. tinyldm/models/ holds the architectures; their from_pretrained / save_pretrained call in here, and
pretrained.py imports no model, so the import runs one way (tests/test_imports.py)."""
