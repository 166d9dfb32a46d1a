"""Reading finished runs: rates with their intervals, breakdowns, figures, the leaderboard, exports, one
run for the browser, and validation against DFT labels."""
