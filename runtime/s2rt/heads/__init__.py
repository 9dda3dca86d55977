"""Heads beyond the linear Skip2-LoRA adapters, trained from the same cached taps.

standardize  per-feature mean/std of the fine-tune set's taps (shared by every head here)
nonlinear    skip2relu: per tap A_l -> ReLU -> B_l on standardized taps
rls          recursive least squares (ridge), chunk by chunk or one sample at a time
oselm        oselm / oselm-rf: closed-form ridge to the logit residual, optional random ReLU features
branches     what `s2conv export` needs to put any of them into a graph
"""
