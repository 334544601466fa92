"""The public benchmarks sicog can run through lmms-eval: their names and how each is scored.

Import-free on purpose (not even the rest of sicog): sicog.config validates `eval.benchmarks`
against these names, and sicog.evaluate.lmms (which runs in the eval environment with only the
`sicog` package on PYTHONPATH) scores with them, so neither pulls the other's dependencies in.
"""

HELDOUT_VQA = "sicog_heldout_vqa"
HELDOUT_CAPTION = "sicog_heldout_caption"

# benchmark -> (its primary metric in lmms-eval 0.7.3's results, factor to a 0-1 score). The keys are
# those of the task YAMLs' metric_list; judged scores and MMStar's sub-scores are percentages.
BENCHMARKS: dict[str, tuple[str, float]] = {
    "mmstar": ("average", 1.0),
    "ai2d": ("exact_match", 1.0),
    "scienceqa_img": ("exact_match", 1.0),
    "pope": ("pope_f1_score", 1.0),
    "mmbench_en_dev": ("gpt_eval_score", 0.01),
    "chartqa": ("relaxed_overall", 1.0),
    "docvqa_val": ("anls", 1.0),
    "ocrbench": ("ocrbench_accuracy", 1.0),
    "seedbench": ("seed_all", 1.0),
    "mmvet": ("gpt_eval_score", 0.01),
    # mathvista_testmini is a group of three prompt styles; the direct-format one is the benchmark.
    "mathvista_testmini_format": ("llm_as_judge_eval", 0.01),
    HELDOUT_VQA: ("exact_match", 1.0),
    HELDOUT_CAPTION: ("attribute_recall", 1.0),
}
# benchmark -> the Hugging Face dataset repository its lmms-eval 0.7.3 task YAML loads (dataset_path):
# what `sicog eval prefetch` downloads into the benchmarks' dataset cache, and what evaluate checks is there.
DATASETS: dict[str, str] = {
    "mmstar": "Lin-Chen/MMStar",
    "ai2d": "lmms-lab-encoder/ai2d",
    "scienceqa_img": "lmms-lab-encoder/ScienceQA",
    "pope": "lmms-lab-encoder/POPE",
    "mmbench_en_dev": "lmms-lab-encoder/MMBench",
    "chartqa": "lmms-lab-encoder/ChartQA",
    "docvqa_val": "lmms-lab-encoder/DocVQA",
    "ocrbench": "echo840/OCRBench",
    "seedbench": "lmms-lab-encoder/SEED-Bench",
    "mmvet": "lmms-lab-encoder/MMVet",
    "mathvista_testmini_format": "AI4Math/MathVista",
}
# Scored by an OpenAI-compatible judge. MMBench's evaluator posts to OPENAI_API_URL as the full
# chat-completions URL; lmms_eval.llm_judge (MMVet, MathVista) takes it as the API base URL.
JUDGED = {"mmbench_en_dev": "full_url", "mmvet": "base_url", "mathvista_testmini_format": "base_url"}
# Which held-out metric of `evaluate_heldout` each local task reproduces.
HELDOUT_EQUIVALENT = {HELDOUT_VQA: "vqa_accuracy", HELDOUT_CAPTION: "caption_attribute_recall"}
