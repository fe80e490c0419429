"""The paper's theory: the eigenmode ODE (Eqns 11-13) and the linear BYOL network it describes, simulated."""
