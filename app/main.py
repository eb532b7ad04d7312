"""Placeholder entry point until the explorer lands."""

import streamlit as st

st.title("resattn")
st.write("The Residual Attention Network explorer is being built.")
