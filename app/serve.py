"""The explorer with lecture rooms: ``streamlit run app/serve.py``.

Serves ``app/main.py`` (every page, as ``streamlit run app/main.py`` does) and adds the routes a lecture
follower's page uses (:mod:`ui.room_routes`): it waits on its room and fetches each new scene as one HTML
fragment, so a room at rest costs nothing and a change costs no Streamlit rerun in any follower's browser.
"""

import streamlit as st
from streamlit import config
from ui import room_routes

room_routes.SERVED = True
app = st.App("main.py", routes=room_routes.routes(config.get_option("server.baseUrlPath") or ""))
