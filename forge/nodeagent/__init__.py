"""The node agent: converges the processes on this machine toward its Instances (DESIGN §4)."""
