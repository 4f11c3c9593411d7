"""cli: the rich terminal front end (`lineup`)."""
