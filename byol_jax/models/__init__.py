"""The networks: ResNet trunks, projector and predictors, per-view BatchNorm, and the CPU convolutions (native/)."""
