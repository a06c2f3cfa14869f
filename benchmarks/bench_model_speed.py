"""Speed and peak memory of detr_hf's DETR-R50 against transformers' DetrForObjectDetection, measured in one run.

Both models hold the same random weights (no download). Each case runs in its own process, as a user runs it: one
model built, two warm-up calls, then `--repeats` timed calls; the cases alternate over `--rounds` so that a busy
machine slows each alike, and the table gives the median. Cases: inference at batch 1, 800x1066 (fp32, and detr_hf
under bf16 autocast); the fp32 backbone alone; a training step (forward, backward, AdamW) at batch 2 with 5 boxes an
image, backbone stages 2-4 trainable in both.

The table also counts minor page faults per call: at this size every feature map of 32 MB or more that a model
allocates anew comes back from the kernel as fresh pages (glibc returns such blocks on free), and faulting them in
costs about as much as the 1x1 convolution that fills them. Both models run under the same allocator; set
`THP_MEM_ALLOC_ENABLE=1` (PyTorch's option for huge pages) to see both with far fewer faults.

    python benchmarks/bench_model_speed.py [--threads 2] [--repeats 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import machine_line  # benchmarks/machine.py: scripts run from benchmarks/

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
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, buffer in reference.named_buffers():  # BatchNorm statistics other than the identity
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


def make_step(model, mode: str):
    """A closure running one inference (fp32 or bf16 autocast) or one training step (forward, backward, AdamW)."""
    if mode == "train":
        model.train()
        pixels, mask, labels = inputs(2)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, foreach=True)

        def step():
            loss = model(pixel_values=pixels, pixel_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        return step
    model.eval()
    pixels, mask, _ = inputs(1)
    if mode == "backbone":  # the ResNet-50 alone, fp32: the floor under any fp32 inference time
        backbone = model.model.backbone

        def step():
            with torch.no_grad():
                return backbone(pixels, mask)

        return step

    def step():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16"):
            return model(pixel_values=pixels, pixel_mask=mask)

    return step


def run_case(impl: str, mode: str, repeats: int) -> dict:
    """One case in this process, as a user runs it: build, warm up twice, time `repeats` calls.

    Returns the median seconds and minor page faults per call, the peak resident memory over all calls (VmHWM, reset
    after building; unlike ru_maxrss it is not inherited from the parent across exec) and, for inference, the
    detections of the first call."""
    step = make_step(build(impl), mode)
    gc.collect()  # the random reference model that lent its weights goes before the peak is reset
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    first = step()
    step()
    seconds, faults = [], []
    for _ in range(repeats):
        faults_before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
    status = Path("/proc/self/status").read_text()
    result = {
        "seconds": statistics.median(seconds),
        "faults": statistics.median(faults),
        "peak_mib": int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024,
    }
    if mode in ("fp32", "bf16"):
        result.update(logits=first.logits[0].tolist(), boxes=first.pred_boxes[0].tolist())
    return result


def compare_detections(fp32: dict, other: dict) -> tuple[float, float, float]:
    """Per query: share with the same predicted class, largest score change, largest box-corner shift in pixels.

    A random model scores its queries almost alike, so comparing rankings would test noise; comparing every query's
    class, score and box is the stricter check."""
    probs = [torch.tensor(r["logits"]).softmax(-1)[:, :-1] for r in (fp32, other)]
    (score_a, label_a), (score_b, label_b) = (p.max(-1) for p in probs)
    scale = torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT])
    from detr_hf.box_ops import cxcywh_to_xyxy

    boxes_a, boxes_b = (cxcywh_to_xyxy(torch.tensor(r["boxes"])) * scale for r in (fp32, other))
    same = (label_a == label_b).float().mean().item()
    return same, (score_a - score_b).abs().max().item(), (boxes_a - boxes_b).abs().max().item()


def run_case_in_subprocess(impl: str, mode: str, threads: int, repeats: int) -> dict:
    code = (
        f"import json, torch; torch.set_num_threads({threads}); import sys; sys.path.insert(0, 'benchmarks');"
        f"from bench_model_speed import run_case; print(json.dumps(run_case({impl!r}, {mode!r}, {repeats})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case and round")
    parser.add_argument("--rounds", type=int, default=2, help="times each case's process runs, alternating")
    args = parser.parse_args()
    cases = [
        ("transformers", "fp32"),
        ("detr_hf", "fp32"),
        ("detr_hf", "bf16"),
        ("transformers", "backbone"),
        ("detr_hf", "backbone"),
        ("transformers", "train"),
        ("detr_hf", "train"),
    ]
    rounds: dict[tuple[str, str], list[dict]] = {case: [] for case in cases}
    for round_index in range(args.rounds):  # cases alternate, so a busy machine slows each alike
        for impl, mode in cases:
            print(f"round {round_index + 1}/{args.rounds}: {impl} {mode} ...", file=sys.stderr, flush=True)
            rounds[impl, mode].append(run_case_in_subprocess(impl, mode, args.threads, args.repeats))
    results = {
        case: {  # detections from the first round; medians of time and faults; the highest peak
            **runs[0],
            "seconds": statistics.median(r["seconds"] for r in runs),
            "faults": statistics.median(r["faults"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs),
        }
        for case, runs in rounds.items()
    }
    print(
        f"\nDETR-R50, {args.threads} threads, {args.rounds} rounds of {args.repeats} calls, each case in its own process "
        f"({machine_line()})\n"
    )
    print(
        "| case | transformers s | detr_hf s | speed-up | transformers peak MiB | detr_hf peak MiB "
        "| page faults / call (transformers, detr_hf) |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = [
        ("inference fp32, batch 1, 800x1066", "fp32", "fp32"),
        ("inference detr_hf bf16 autocast vs transformers fp32", "fp32", "bf16"),
        ("training step, batch 2, 5 boxes/image", "train", "train"),
    ]
    for title, ref_mode, our_mode in rows:
        ref, ours = results["transformers", ref_mode], results["detr_hf", our_mode]
        print(
            f"| {title} | {ref['seconds']:.3f} | {ours['seconds']:.3f} | {ref['seconds'] / ours['seconds']:.2f}x "
            f"| {ref['peak_mib']:.0f} | {ours['peak_mib']:.0f} | {ref['faults']:,.0f}, {ours['faults']:,.0f} |"
        )
    backbone = results["detr_hf", "backbone"]["seconds"]
    print(
        f"\nfp32 backbone (ResNet-50 alone): transformers {results['transformers', 'backbone']['seconds']:.3f} s, "
        f"detr_hf {backbone:.3f} s; with the transformer for free, fp32 inference could be at most "
        f"{results['transformers', 'fp32']['seconds'] / backbone:.2f}x faster than transformers"
    )
    same, score_shift, box_shift = compare_detections(results["detr_hf", "fp32"], results["detr_hf", "bf16"])
    print(
        f"\nbf16 vs fp32 (detr_hf, every query): same class {same:.0%}, largest score change {score_shift:.4f}, "
        f"largest box shift {box_shift:.3f} px at {HEIGHT}x{WIDTH}"
    )
    same, score_shift, box_shift = compare_detections(results["transformers", "fp32"], results["detr_hf", "fp32"])
    print(
        f"detr_hf vs transformers (fp32, every query): same class {same:.0%}, largest score change "
        f"{score_shift:.2e}, largest box shift {box_shift:.4f} px"
    )


if __name__ == "__main__":
    main()
