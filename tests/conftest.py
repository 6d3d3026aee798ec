import torch

# Tests run on 2 CPU cores; keep thread count predictable.
torch.set_num_threads(2)
