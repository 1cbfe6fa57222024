"""The lifecycle after training: evaluate, gate, register, promote, and the steps in order."""
