"""Where gradtool meets the tools training runs in: TensorBoard (`Monitor(..., tensorboard=)`),
Lightning (`integrations.lightning.GradFlowCallback`) and the Hugging Face Trainer
(`integrations.transformers.GradFlowCallback`).

Each is an optional dependency, imported only by its own module, and only when used:
importing gradcheck_tool (or this package) imports none of them.
"""
