"""Multi-hop inference: output parsing, the batched agent loop and generation backends (hf, vllm)."""

from qa_train.inference.agent import AgentResult, run_agent
from qa_train.inference.parsing import MalformedCallError, parse_final_answer, parse_generation

__all__ = ["AgentResult", "MalformedCallError", "parse_final_answer", "parse_generation", "run_agent"]
