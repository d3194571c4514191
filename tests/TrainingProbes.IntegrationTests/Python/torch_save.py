"""Writes a checkpoint with PyTorch's own torch.save, for the C# loader to read back.

Usage: torch_save.py <folder>. Writes <folder>/model.pt (torch.save of a state_dict, the zip format) and
<folder>/values.json (every entry's shape and values, as Python sees them).
"""
import json
import os
import sys

import torch


def main(folder):
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.train()
    with torch.no_grad():
        for _ in range(3):   # moves the batch norm's running statistics off their initial values
            model(torch.randn(32, 6))
    state = model.state_dict()
    torch.save(state, os.path.join(folder, "model.pt"))
    values = {name: {"shape": list(t.shape), "dtype": str(t.dtype), "values": t.double().flatten().tolist()}
              for name, t in state.items()}
    with open(os.path.join(folder, "values.json"), "w") as f:
        json.dump({"torch": torch.__version__, "tensors": values}, f)
    print(json.dumps({"torch": torch.__version__, "entries": len(values)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
