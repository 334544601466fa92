"""Exact prompt strings, step headers and turn questions of SICOG (arXiv 2503.12303).

These strings are the contract between the annotated data, the sampler and the parsers: a model
trained on one header wording only emits that wording, so every module takes them from here.
The first entry of each paraphrase list is the paper's own prompt.
"""

from __future__ import annotations

# Caption prompts (paper Sec. 3.1 and the reference scripts).
CAPTION_DD = "Please generate a detailed caption of this image. Be as descriptive as possible."
CAPTION_COD = "Please generate a detailed caption of this image. Describe the image step-by-step."

# Paraphrases give the annotated data prompt variety (the paper's training data mixes phrasings).
# Every CoD paraphrase asks for steps and no DD paraphrase does, so the prompt alone tells the
# model which format to answer in.
DD_PARAPHRASES = [
    CAPTION_DD,
    "Please provide a thorough description of this image.",
    "Describe this image in detail.",
    "Write a detailed description of the picture.",
]
COD_PARAPHRASES = [
    CAPTION_COD,
    "Please describe this image in detail, step-by-step.",
    "Describe the picture step-by-step, from its key elements to a full description.",
]

# VQA prompt suffixes: CoT appends COT_SUFFIX; the short-answer suffix of LLaVA data is replaced.
COT_SUFFIX = "Answer the question step-by-step."
SHORT_SUFFIX = "Answer the question using a single word or phrase."

# Chain-of-Description: five steps (paper Sec. 3.1); step 5 is the full description.
COD_HEADERS = [
    "Extract salient content by identifying the key elements that define the image.",
    "Analyze detailed information, focusing on instance-level attributes such as low-level and fine-grained details.",
    "Consider relational-level attributes, analyzing interactions between elements and their spatial organization.",
    "Examine marginal or peripheral content to ensure no important information is missed.",
    "Organize all observations into a detailed, cohesive description.",
]

# Structured chain-of-thought: four steps replacing LLaVA-CoT's tags, in this order.
COT_HEADERS = [
    "Clarify the task objective.",
    "Extract the crucial visual information from the image.",
    "Generate detailed reasoning to solve the task.",
    "Conclude the task with an answer.",
]
LLAVA_COT_TAGS = ["SUMMARY", "CAPTION", "REASONING", "CONCLUSION"]

# The paper's questions when a high-consistency CoD winner becomes a five-turn conversation.
COD_TURN_QUESTIONS = [
    "What are the crucial details that define the image?",
    "Can you analyze the image for instance-level attributes and low-level details?",
    "What is the relationship between the components, and how are they arranged?",
    "Is there anything in the margins or borders of the image worth noting?",
    "How would you describe the image in a well-organized and cohesive manner?",
]


def all_prompt_texts() -> list[str]:
    """Every fixed string above, for tokenizer training: the model must be able to emit the headers."""
    return [
        *DD_PARAPHRASES,
        *COD_PARAPHRASES,
        COT_SUFFIX,
        SHORT_SUFFIX,
        *COD_HEADERS,
        *COT_HEADERS,
        *COD_TURN_QUESTIONS,
    ]
