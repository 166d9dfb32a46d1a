"""The web app (`phononbench serve`): run browsing, and checks of single uploaded structures read in
processes of their own."""
