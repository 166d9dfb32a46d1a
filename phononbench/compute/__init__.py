"""The potentials, the engines that drive them (serial, batched, torchsim) and the method composed once
over any engine (method.compute): relax -> Gamma screen -> phonons -> verdicts."""
