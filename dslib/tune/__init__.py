"""Memory and communication tuning (chapter 09): activation checkpointing, parameter
sharing, PowerSGD with byte counting, all applied from outside the chapter 03 model."""
