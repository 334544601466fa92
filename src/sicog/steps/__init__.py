"""The SICOG steps, one module each: what a KFP component (components/) and a CLI command call.

Each step takes the config and a `StepIO` (its named input URIs and the URI of its output folder,
built by the caller; see _io.py), works on local folders and writes its output, `step.json` (its own
figures) and `timings.json` (its row merged with those of the inputs it read). A step wires rooms of
the library together and holds no domain logic; no step calls another.

    world     make_world                  the data catalog (user datasets, or the demo world)
    model     init_model, extract_backbone    the starting model; the backbone LLM for text-only
    warmup    warmup                      step 1: perception / reasoning models (SFT, or DPO)
    train     train                       step 4: stage 1 / 1.5 / 2 (torchrun or a cluster job)
    sample    sample_shard, collect       step 2: candidates per shard, then one file per task
    score     score                       step 3a: self-consistency scores, keep decisions
    curate    curate                      step 3b: curated records, the ablation, curation quality
    evaluate  evaluate                    held-out scores and lmms-eval benchmarks
    report    report                      metrics.json, report.html, the promotion decision
    series    start_cycle, seal_cycle     where a cycle starts; lineage.json seals it
    annotate  annotate_cod, annotate_cot  step-1 data from a teacher or LLaVA-CoT (CLI only)

References: arXiv 2503.12303, Sec. 3 (steps 1-4) and Table 13 (training stages).
"""

from sicog.steps._io import StepIO

__all__ = ["StepIO"]
