"""Local HTTP doubles of the vast.ai and RunPod APIs (the only test doubles in this project)."""
