"""Run records (write, read) and the leaderboard."""
