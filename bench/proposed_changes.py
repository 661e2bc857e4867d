"""Evidence for two proposed package changes, measured by monkeypatching (no package file is edited).

1. ``--part criterion`` -- DistillationTrainer/criterion: run the teacher *before* the student in
   ``DistillationTrainer.compute_loss`` (so the attention mask is known and the teacher's transient activations are
   freed before the student's are allocated), and compute the feature losses -- and the feature matchers -- on
   the real (non-padded) rows only: ``(B, L, D)`` features become ``x[mask]`` ``(N, D)``, attention maps
   ``(B, H, L, L)`` become ``x.transpose(1, 2)[mask]`` ``(N, H, L)`` (real query rows). Same loss value (checked
   here), less work: with dynamic padding about half of the positions of a random batch of 32 snippets are padding.
   Compared, interleaved, with the current step and with "plain Trainer step + teacher forward" (the target of
   ``distill_step_overhead.py``).
2. ``--part cache`` -- TeacherOutputCache: the teacher pass that fills the cache runs its batches in dataset order,
   so every batch of 64 random examples is padded to its longest one. Running it on length-sorted batches (then
   writing the rows back in dataset order) does the same work on about half the tokens. Measured on the first
   ``--examples`` training examples.

3. ``--mallopt`` (with ``--part criterion``) -- glibc malloc tuning: with its default dynamic thresholds glibc
   returns the freed top of the heap to the kernel after a step and page-faults it back in on the next one (tens
   of thousands of minor faults per distillation step: see the ``page faults/step`` column). ``--mallopt`` calls
   ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` and ``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` through ctypes at start (the
   same as ``MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=33554432`` in the environment).

    python bench/proposed_changes.py [--part criterion|cache|all] [--repeats 16] [--threads 1] [--mallopt] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import setup_threads  # noqa: E402

THREADS = setup_threads()

import torch  # noqa: E402

torch.set_num_threads(THREADS)

import _common as C  # noqa: E402


# ------------------------------------------------------------------------------------------ 1. criterion
def gather_rows(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Real rows: (B, L, D) -> (N, D); attention maps (B, H, L, L) -> (N, H, L) (real query rows)."""
    return x[mask] if x.ndim == 3 else x.transpose(1, 2)[mask]


def real_rows_loss_cal(self, teacher_outputs=None, scales=None):
    """Prototype of IntermediateLayersKnowledgeDistillationLoss.loss_cal on real rows (no `scales` handling:
    the benchmark has no gradient accumulation; the real change multiplies by scales['token'] as today)."""
    try:
        mask = self.attention_mask.bool() if self.attention_mask is not None else None
        total, terms = None, {}
        for i, mapping in enumerate(self.layer_mappings):
            matched = str(i) in self.feature_matchers
            if matched:
                student = self._student_capture.features[("matched", i)]  # already (N, D_teacher)
            else:
                student = self._student_capture.get(mapping.student_layer, mapping.student_process)
            teacher = (teacher_outputs[i] if teacher_outputs is not None
                       else self._teacher_capture.get(mapping.teacher_layer, mapping.teacher_process))
            teacher = teacher.to(device=student.device, dtype=student.dtype)
            if not matched:
                student, teacher = self._align_heads(i, student, teacher)
                if mask is not None and student.ndim in (3, 4):
                    student = gather_rows(student, mask)
            if mask is not None and teacher.ndim in (3, 4):
                teacher = gather_rows(teacher, mask)
            loss = self.loss_funcs[i](student, teacher, None)
            terms[self.loss_names[i]] = loss.detach()
            weighted = self.loss_weights[i] * loss
            total = weighted if total is None else total + weighted
        self.last_loss_terms = terms
        return total
    finally:
        self._clear()


def install_real_rows(criterion) -> None:
    """Matchers applied to the real rows inside the student's forward (needs the mask before that forward)."""
    capture = criterion._student_capture
    for key, transforms in capture._transforms.items():
        new = []
        for out_key, matcher in transforms:
            def transform(value, matcher=matcher):
                mask = criterion.attention_mask
                return matcher(value[mask.bool()] if mask is not None else value)
            new.append((out_key, transform))
        capture._transforms[key] = new
    criterion.loss_cal = real_rows_loss_cal.__get__(criterion)


def teacher_first_trainer_class():
    from autodistill_trainer.trainer import DistillationTrainer, _output_loss

    class TeacherFirstDistillationTrainer(DistillationTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training or self._cached_columns:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.criterion.teacher_model_forward(inputs)  # sets criterion.attention_mask, frees teacher transients
            outputs = model(**{k: v for k, v in inputs.items() if not k.startswith("teacher_")})
            loss = self.criterion.loss_cal(scales=self._accumulation_scales(inputs))
            origin = _output_loss(outputs)
            if self.criterion.add_origin_loss and origin is not None:
                loss = loss + origin
            self._record_terms(dict(self.criterion.last_loss_terms))
            return (loss, outputs) if return_outputs else loss

    return TeacherFirstDistillationTrainer


def part_criterion(args) -> bool:
    import copy

    import autodistill_trainer
    import distill_step_overhead as D
    from autodistill_trainer.criterion import IntermediateLayersKnowledgeDistillationLoss

    tokenized, _, collator = C.load_data(max_length=64)
    train = tokenized["train"]
    batches = [C.fetch(train, collator, idx) for idx in C.index_batches(len(train), 32, args.batches, seed=0)]
    real = sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)
    print(f"[criterion] {len(batches)} batches of 32, real-token share {100 * real:.1f}%")

    # Same loss value (eval mode: no dropout), on one batch.
    s, t = C.build_student(), C.build_teacher()
    mappings, losses = D.flat_flash_mappings(s, t)
    current = IntermediateLayersKnowledgeDistillationLoss(s, t, mappings, loss_types=losses)
    s2, t2 = copy.deepcopy(s), copy.deepcopy(t)
    proposed = IntermediateLayersKnowledgeDistillationLoss(s2, t2, mappings, loss_types=losses)
    install_real_rows(proposed)
    s.eval(), s2.eval()
    with torch.no_grad():
        current.teacher_model_forward(batches[0]), s(**batches[0])
        a = current.loss_cal()
        proposed.teacher_model_forward(batches[0]), s2(**batches[0])
        b = proposed.loss_cal()
    same = torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    print(f"[criterion] loss current {a.item():.7f}, proposed {b.item():.7f}: {'same' if same else 'DIFFERENT'}")
    current.remove_hooks(), proposed.remove_hooks()

    with tempfile.TemporaryDirectory() as tmp:
        cur = D.make_variant("distill", C.build_student(), C.build_teacher(), batches, tmp)
        cur.name = "distill, current"
        original = autodistill_trainer.DistillationTrainer
        autodistill_trainer.DistillationTrainer = teacher_first_trainer_class()
        try:
            new = D.make_variant("distill", C.build_student(), C.build_teacher(), batches, tmp)
        finally:
            autodistill_trainer.DistillationTrainer = original
        install_real_rows(new.trainer.criterion)
        new.name = "distill, teacher first + real rows"
        plain = D.make_variant("plain_plus_teacher", C.build_student(), C.build_teacher(), batches, tmp)
        plain.name = "plain step + teacher forward"
        steps = [cur, new, plain]
        C.interleave(steps, len(batches), args.warmup, args.repeats, log=lambda line: None)
    for step in steps:
        print("[criterion] " + C.summary_line(step))
    r_cur, r_new = C.paired_ratio(cur, plain), C.paired_ratio(new, plain)
    print(f"[criterion] ratio to plain + teacher: current {r_cur:.3f}, proposed {r_new:.3f} "
          f"(proposed / current {C.paired_ratio(new, cur):.3f}); target <= 1.10")
    return same and r_new <= 1.10


# ------------------------------------------------------------------------------------------ 2. cache pass
def part_cache(args) -> bool:
    tokenized, _, collator = C.load_data(max_length=64, train_samples=args.examples)
    train = tokenized["train"]
    teacher = C.build_teacher()
    keys = ("input_ids", "attention_mask", "token_type_ids")
    lengths = [len(x) for x in train["input_ids"]]

    def teacher_pass(order):
        cpu, tokens = time.thread_time(), 0
        with torch.no_grad():
            for i in range(0, len(order), 64):
                batch = collator(train.__getitems__(order[i:i + 64]))
                tokens += batch["input_ids"].numel()
                teacher(**{k: batch[k] for k in keys})
        return time.thread_time() - cpu, tokens

    dataset_order = list(range(len(train)))
    sorted_order = sorted(dataset_order, key=lengths.__getitem__)
    times = {"dataset order": [], "length-sorted": []}
    tokens = {}
    for _ in range(2):  # interleaved
        for name, order in (("dataset order", dataset_order), ("length-sorted", sorted_order)):
            secs, tokens[name] = teacher_pass(order)
            times[name].append(secs)
    for name in times:
        print(f"[cache] teacher pass over {len(train):,} examples, batch 64, {name:<13}: "
              f"{min(times[name]):6.2f} s CPU (min of 2), {tokens[name]:,} padded tokens (real {sum(lengths):,})")
    speedup = min(times["dataset order"]) / min(times["length-sorted"])
    print(f"[cache] length-sorted pass is {speedup:.2f}x faster")
    return speedup > 1.0


def apply_mallopt() -> bool:
    """Keep freed heap memory mapped (no trim) and serve allocations up to 32 MiB from the heap (glibc only)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    except (OSError, AttributeError):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["criterion", "cache", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mallopt", action="store_true", help="tune glibc malloc first (see the docstring)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.mallopt:
        print(f"mallopt(M_TRIM_THRESHOLD=1 GiB, M_MMAP_THRESHOLD=32 MiB): {'applied' if apply_mallopt() else 'FAILED'}")
    if args.quick:
        args.repeats, args.warmup, args.batches, args.examples = 3, 1, 3, 256
    print(C.machine_line())
    ok = True
    if args.part in ("criterion", "all"):
        ok &= part_criterion(args)
    if args.part in ("cache", "all"):
        ok &= part_cache(args)
    print(f"{'PASS' if ok else 'FAIL'}: proposed changes {'meet' if ok else 'do not meet'} their targets "
          f"({THREADS} thread(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
