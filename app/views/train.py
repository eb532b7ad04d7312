"""Train: the slot for fine-tuning jobs (filled by the fine-tuning jobs issue)."""

import streamlit as st

st.title("Train")
st.info("Fine-tuning jobs will appear here (a later issue adds them). Until then, train with the command line; "
        "every checkpoint saved to `checkpoints/` shows up in the model picker without code changes.")
