"""The paper's Tables 1–3 and Figure 2, rendered from the results store beside the paper's numbers."""
