"""Step-1 data: annotations for the warm-up (CoD via a teacher, LLaVA-CoT conversion, DPO pairs)."""
