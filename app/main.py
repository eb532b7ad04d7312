"""The resattn explorer: ``streamlit run app/serve.py`` (this script, plus lecture rooms' wait route), or
``streamlit run app/main.py`` (the same pages; lecture followers then poll).

The sidebar (model, image, stage, module, colours) is shared by every page; each page lives in ``app/views/``,
the parts pages share in ``app/ui/``.
"""

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # `from ui import components, state` from any working directory
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))  # `import resattn` from a checkout that is not pip-installed

from ui import components, urlstate  # noqa: E402

st.set_page_config(page_title="resattn explorer", page_icon=":material/search:", layout="wide")

PAGES = [
    st.Page("views/explore.py", title="Explore", icon=":material/search:", default=True),
    st.Page("views/attribution.py", title="Attribution", icon=":material/target:"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/dataset.py", title="Dataset", icon=":material/grid_view:"),
    st.Page("views/learn.py", title="Learn", icon=":material/school:"),
    st.Page("views/train.py", title="Train", icon=":material/model_training:"),
    st.Page("views/lecture.py", title="Lecture", icon=":material/co_present:"),
]

page = st.navigation(PAGES)
if page.url_path != "lecture" and ("room" in st.query_params or "lecture" in st.query_params):
    st.switch_page("views/lecture.py", query_params=st.query_params.to_dict())  # /?room=CODE, /?lecture=NAME
components.style()
components.keep_widget_state()
st.session_state.pop("_context", None)
name = page.url_path or "explore"  # the default page has the empty path
for problem in urlstate.restore(name):  # a shared link's view, on the session's first run
    st.warning(f"This link's view could not be restored entirely: {problem}.")
if name != "lecture":  # a lecture's scenes name their own models and photos: no pickers to draw
    components.sidebar()
    urlstate.link_box(name)
page.run()
