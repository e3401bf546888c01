"""Front ends for notebooks (ipywidgets + plotly). They wire package functions; no logic here."""
