"""Evaluation: ranking (`rank`), metrics (`metrics`), per-task scoring (`scoring`), benchmark definitions
(`registry`), MMEB-V2 / UVRB aggregation (`report`) and the end-to-end runner (`runner`).

Submodules are imported on use, so `import embedrl.eval` stays cheap (ranking pulls in torch lazily).
"""
