"""The extension backend (upstream pkg/backend/extension): the data path is the user's commands."""
