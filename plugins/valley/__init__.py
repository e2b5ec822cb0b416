"""Valley: a video assistant with spatio-temporal pooling (`valley/stpool`), plus Video-ChatGPT's pooling
(`valley/vcgpt-pool`) for comparison, a two-stage training recipe and an offline demo (`omnimm demo valley`)."""
