"""The SICOG cycle pipeline (importable as sicog.pipelines)."""
