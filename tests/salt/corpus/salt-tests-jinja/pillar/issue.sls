file_path: /tmp/issue-54765
