# The MNIST example's test accuracy, recomputed with PyTorch from the weights it saved (model.pt): the example's MLP
# (784-128-128-10, ReLU) built in PyTorch, the repository's last 2,000 digits (its test split) read from the IDX files
# with numpy and scaled to [0, 1] as the example does. Prints {"correct": c, "total": n, "accuracy": c / n}.
#   python3 mnist_accuracy.py <model.pt> <data/mnist-10k folder>
import gzip
import json
import sys

import numpy as np
import torch

TEST = 2000


def idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


weights, data = sys.argv[1], sys.argv[2]
images = idx(f"{data}/images-idx3-ubyte.gz")
labels = idx(f"{data}/labels-idx1-ubyte.gz")
n = images.shape[0]
x = torch.from_numpy(images[n - TEST:].reshape(TEST, 28 * 28).astype(np.float32) / np.float32(255.0))
y = torch.from_numpy(labels[n - TEST:].astype(np.int64))

model = torch.nn.Sequential(
    torch.nn.Linear(784, 128), torch.nn.ReLU(),
    torch.nn.Linear(128, 128), torch.nn.ReLU(),
    torch.nn.Linear(128, 10))
model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
model.eval()
with torch.no_grad():
    correct = int((model(x).argmax(1) == y).sum())
print(json.dumps({"correct": correct, "total": TEST, "accuracy": correct / TEST}))
