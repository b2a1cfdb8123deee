"""HTML reports a user opens in a browser: contact sheets, decisions and reasons."""
