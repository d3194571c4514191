"""Reads what TrainingProbes wrote, with PyTorch and numpy only, and recomputes what it published.

Usage: python3 pytorch_interop.py MANIFEST.json

The manifest (written by PyTorchInteropTests) names a .pt and a .safetensors checkpoint of a small network, the
network's layer sizes, an input batch with the outputs the C# model gave for it in eval mode, one exported gradient
window, and the euclidean cosine, relative regret and m-coherence the library published for that window.

This script
  1. builds the same architecture in PyTorch and loads the .pt with torch.load (also with weights_only=True, the
     default of PyTorch 2.6 and later) and load_state_dict(strict=True), then the .safetensors file the same way;
  2. runs both loaded networks on the input and compares with the C# outputs;
  3. reads the exported window with its own safetensors reader (no safetensors package needed), recomputes the
     three indicators with numpy in float64 from the definitions, and compares them with the published values.

It prints one JSON object with every recomputed number and the worst differences, and exits 1 if any check fails.
"""
import json
import struct
import sys

import numpy as np
import torch

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    """Tensors (as numpy arrays) and metadata of a safetensors file, read from the format's definition."""
    with open(path, "rb") as f:
        data = f.read()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_length].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    body = data[8 + header_length:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<"))
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors, metadata


def build_model(sizes, dtype):
    """The C# test's architecture: Linear, BatchNorm1d, ReLU, Linear, as an nn.Sequential."""
    inputs, hidden, outputs = sizes
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.BatchNorm1d(hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, outputs)).to(dtype)


def first_order(window):
    """Euclidean cosine, relative regret and m-coherence of K gradients (rows), in float64."""
    g = np.concatenate([t.reshape(t.shape[0], -1).astype(np.float64) for t in window], axis=1)
    k = g.shape[0]
    gram = g @ g.T
    n = np.sqrt(np.diag(gram))
    off = ~np.eye(k, dtype=bool)
    cosine = (gram / np.outer(n, n))[off].mean()
    # r_ij = n_j - G_ij / n_i over ordered pairs i != j; relative regret = sum r / sum n_j.
    regret = (n[None, :] - gram / n[:, None])[off]
    reference = np.broadcast_to(n[None, :], (k, k))[off]
    relative_regret = regret.sum() / reference.sum()
    mean_gradient = g.mean(axis=0)
    coherence = k * (mean_gradient @ mean_gradient) / np.mean(n ** 2)
    return {"cosine": float(cosine), "relative_regret": float(relative_regret), "coherence": float(coherence)}


def main(manifest_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    failures = []
    report = {"torch": torch.__version__, "numpy": np.__version__}

    dtype = getattr(torch, manifest["dtype"])
    x = torch.tensor(manifest["input"], dtype=dtype)
    expected_output = np.array(manifest["output"], dtype=np.float64)
    output_tolerance = manifest["output_tolerance"]

    # 1. The .pt checkpoint, through torch.load and a strict load_state_dict.
    for weights_only in (False, True):
        state = torch.load(manifest["pt"], map_location="cpu", weights_only=weights_only)
        model = build_model(manifest["sizes"], dtype)
        model.load_state_dict(state, strict=True)
        for name, tensor in state.items():
            if tensor.dtype != dtype and tensor.is_floating_point():
                failures.append(f".pt: {name} is {tensor.dtype}, expected {dtype}")
        model.eval()
        with torch.no_grad():
            diff = float(np.abs(model(x).double().numpy() - expected_output).max())
        report[f"pt_output_max_abs_diff_weights_only_{weights_only}"] = diff
        if not diff <= output_tolerance:
            failures.append(f".pt (weights_only={weights_only}): outputs differ from C# by {diff}")
        for name, tensor in state.items():
            if tensor.requires_grad:
                failures.append(f".pt: {name} requires grad; a state_dict holds detached tensors")

    # 2. The .safetensors checkpoint, read here and loaded strictly into the same architecture.
    tensors, metadata = read_safetensors(manifest["safetensors"])
    report["safetensors_metadata"] = metadata
    model = build_model(manifest["sizes"], dtype)
    model.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()}, strict=True)
    model.eval()
    with torch.no_grad():
        diff = float(np.abs(model(x).double().numpy() - expected_output).max())
    report["safetensors_output_max_abs_diff"] = diff
    if not diff <= output_tolerance:
        failures.append(f".safetensors: outputs differ from C# by {diff}")
    if metadata.get("format") != "pt":
        failures.append(f".safetensors: metadata format is {metadata.get('format')!r}, expected 'pt'")

    # 3. The exported gradient window and the values published for it.
    window, window_metadata = read_safetensors(manifest["window"])
    report["window_metadata"] = window_metadata
    k = int(window_metadata["k"])
    shapes = {name: list(array.shape) for name, array in window.items()}
    for name, shape in shapes.items():
        if shape[0] != k:
            failures.append(f"window: {name} has leading dimension {shape[0]}, expected K = {k}")
    recomputed = first_order([window[name] for name in sorted(window)])
    report["recomputed"] = recomputed
    report["published"] = manifest["published"]
    differences = {}
    for name, value in recomputed.items():
        published = manifest["published"][name]
        differences[name] = abs(value - published) / max(1.0, abs(value))
        if not differences[name] <= manifest["tolerance"]:
            failures.append(f"window: {name} recomputed {value!r}, published {published!r}")
    report["relative_differences"] = differences

    report["failures"] = failures
    print(json.dumps(report, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
