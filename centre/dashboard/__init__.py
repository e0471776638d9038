"""The command centre's dashboard: map, report feed, media and orders, behind operator logins."""
