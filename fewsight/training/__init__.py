"""Training a learner in a run folder: the one loop (`loop`) that meta-training (`metatrain`) and
base-class pre-training (`pretrain`) share, what it needs (learning-rate `schedules`, CUDA `graphs`,
`distributed` data parallelism, `signals`, the `device`), validation (`evaluate`) and the step
benchmark (`bench`)."""
