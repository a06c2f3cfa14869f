"""Speed and peak memory of detr_hf's DETR-R50 against transformers' DetrForObjectDetection, measured in one run.

Both models hold the same random weights (no download). Each measurement runs in its own subprocess so that its peak
resident memory is its own. Cases: inference at batch 1, 800x1066 (fp32, and detr_hf under bf16 autocast); a training
step (forward, backward, AdamW) at batch 2 with 5 boxes an image, backbone stages 2-4 trainable in both.

    python benchmarks/bench_model_speed.py [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

HEIGHT, WIDTH = 800, 1066


def build(impl: str, num_labels: int = 91):
    import transformers

    from detr_hf import DetrConfig, DetrForObjectDetection
    from detr_hf.configuration_detr import resnet_config_for

    torch.manual_seed(0)
    backbone = resnet_config_for("resnet50")
    reference = transformers.DetrForObjectDetection(
        transformers.DetrConfig(backbone_config=backbone, num_labels=num_labels, auxiliary_loss=True)
    )
    with torch.no_grad():  # realistic BatchNorm statistics instead of the identity
        generator = torch.Generator().manual_seed(1)
        for name, buffer in reference.named_buffers():
            if name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)
    if impl == "transformers":
        for name, parameter in reference.model.backbone.named_parameters():  # its name filter freezes all stages
            parameter.requires_grad_(any(f"stages.{i}." in name for i in (1, 2, 3)))
        return reference
    ours = DetrForObjectDetection(DetrConfig(backbone_config=backbone, num_labels=num_labels))
    ours.load_state_dict(reference.state_dict())
    return ours


def inputs(batch: int):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, HEIGHT, WIDTH, generator=generator)
    mask = torch.ones(batch, HEIGHT, WIDTH, dtype=torch.long)
    labels = []
    for _ in range(batch):
        wh = torch.rand(5, 2, generator=generator) * 0.3 + 0.05
        centre = wh / 2 + torch.rand(5, 2, generator=generator) * (1 - wh)
        labels.append(
            {"class_labels": torch.randint(0, 91, (5,), generator=generator), "boxes": torch.cat([centre, wh], 1)}
        )
    return pixels, mask, labels


def measure(impl: str, mode: str, repeats: int) -> dict:
    """Runs in a subprocess: median seconds and this process's peak RSS (MiB)."""
    model = build(impl)
    if mode == "train":
        model.train()
        pixels, mask, labels = inputs(2)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        pixels, mask, _ = inputs(1)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16")

        def step():
            with torch.no_grad(), autocast:
                return model(pixel_values=pixels, pixel_mask=mask)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - start)
    result = {
        "seconds": statistics.median(times),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if mode != "train":
        result["logits"], result["boxes"] = out.logits[0].tolist(), out.pred_boxes[0].tolist()
    return result


def top_detections(result: dict, k: int = 10) -> list[tuple[int, int, list[float]]]:
    """(query, label, box in pixels) of the k most confident queries, as post-processing ranks them."""
    probs = torch.tensor(result["logits"]).softmax(-1)[:, :-1]
    scores, labels = probs.max(-1)
    boxes = torch.tensor(result["boxes"]) * torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])
    order = scores.argsort(descending=True)[:k]
    return [(int(q), int(labels[q]), boxes[q].tolist()) for q in order]


def run_child(impl: str, mode: str, threads: int, repeats: int) -> dict:
    code = (
        f"import json, torch; torch.set_num_threads({threads}); import sys; sys.path.insert(0, 'benchmarks');"
        f"from bench_model_speed import measure; print(json.dumps(measure({impl!r}, {mode!r}, {repeats})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cases = [
        ("transformers", "fp32"),
        ("detr_hf", "fp32"),
        ("detr_hf", "bf16"),
        ("transformers", "train"),
        ("detr_hf", "train"),
    ]
    results = {}
    for impl, mode in cases:
        print(f"measuring {impl} {mode} ...", file=sys.stderr, flush=True)
        results[impl, mode] = run_child(impl, mode, args.threads, args.repeats)
    print(
        f"\nDETR-R50, {args.threads} threads, median of {args.repeats} (CPU: {torch.backends.cpu.get_cpu_capability()})\n"
    )
    print("| case | transformers s | detr_hf s | speed-up | transformers peak MiB | detr_hf peak MiB |")
    print("|---|---|---|---|---|---|")
    rows = [
        ("inference fp32, batch 1, 800x1066", "fp32", "fp32"),
        ("inference detr_hf bf16 autocast vs transformers fp32", "fp32", "bf16"),
        ("training step, batch 2, 5 boxes/image", "train", "train"),
    ]
    for title, ref_mode, our_mode in rows:
        ref, ours = results["transformers", ref_mode], results["detr_hf", our_mode]
        print(
            f"| {title} | {ref['seconds']:.3f} | {ours['seconds']:.3f} | {ref['seconds'] / ours['seconds']:.2f}x | {ref['peak_mib']:.0f} | {ours['peak_mib']:.0f} |"
        )
    fp32, bf16 = top_detections(results["detr_hf", "fp32"]), top_detections(results["detr_hf", "bf16"])
    same = [a[:2] == b[:2] for a, b in zip(fp32, bf16)]
    shift = max(max(abs(x - y) for x, y in zip(a[2], b[2])) for a, b in zip(fp32, bf16))
    ref_fp32 = top_detections(results["transformers", "fp32"])
    agree = all(a[:2] == b[:2] for a, b in zip(ref_fp32, fp32))
    print(f"\nbf16 vs fp32 top-10 detections: {sum(same)}/10 same (query, label); largest box shift {shift:.3f} px")
    print(f"detr_hf fp32 vs transformers fp32 top-10: {'identical' if agree else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
