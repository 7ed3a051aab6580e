"""Admin: campaign settings — overlap, gold and probe rates, strategy, retrain cadence, target, guidelines."""

from dataclasses import asdict

import streamlit as st

from annotate import campaign, dashboard
from annotate.settings import MAX_OVERLAP, MAX_RETRAIN_MINUTES, MIN_RETRAIN_MINUTES
from annotate.ui import context

# The widgets' bounds are CampaignOptions.validate's, so a value the form accepts is one that saves.
MAX_RATE = 0.5

actor = context.require_admin_page()
settings, db = context.get_settings(), context.get_db()

st.title("Settings")
with context.stop_on_errors():
    with db.read() as session:
        options = dashboard.campaign_options(session, settings, actor=actor)
strategies = dashboard.strategy_names()
if options.strategy not in strategies:
    strategies.append(options.strategy)

with st.form("campaign_settings"):
    st.subheader("Overlap and quality control")
    c1, c2, c3, c4 = st.columns(4)
    overlap = c1.number_input("Overlap", min_value=1, max_value=MAX_OVERLAP, value=options.overlap, step=1,
                              key="opt_overlap", help="Judgments each new comparison needs.")
    max_overlap = c2.number_input("Maximum overlap", min_value=1, max_value=MAX_OVERLAP, value=options.max_overlap,
                                  step=1, key="opt_max_overlap",
                                  help="Adaptive overlap adds judgments on disagreement up to this.")
    gold_rate = c3.number_input("Gold rate", min_value=0.0, max_value=MAX_RATE, value=float(options.gold_rate),
                                step=0.01, format="%.2f", key="opt_gold_rate",
                                help="Share of served pairs that are gold pairs (0 to 0.5).")
    probe_rate = c4.number_input("Probe rate", min_value=0.0, max_value=MAX_RATE, value=float(options.probe_rate),
                                 step=0.01, format="%.2f", key="opt_probe_rate",
                                 help="Share of served pairs that are swapped repeats (0 to 0.5).")
    st.subheader("Active learning and retraining")
    c1, c2, c3 = st.columns(3)
    strategy = c1.selectbox("Acquisition strategy", strategies, index=strategies.index(options.strategy),
                            key="opt_strategy",
                            help="How each retrain orders the queue once the cold start is over. `default` is "
                                 "`bald+diverse`: the pairs the model's ensemble disagrees on most, spread out; "
                                 "`random` keeps a random order (README, Active learning).")
    batch_size = c2.number_input("Batch size", min_value=1, value=options.batch_size, step=1, key="opt_batch_size",
                                 help="Pairs the strategy picks together after each retrain (comparisons).")
    cold_start = c3.number_input("Cold start (random labels first)", min_value=0, value=options.cold_start,
                                 step=1, key="opt_cold_start",
                                 help="Judgments collected in random order before the strategy takes over.")
    c1, c2, c3 = st.columns(3)
    every_labels = c1.number_input("Retrain every N new labels", min_value=1, value=options.retrain_every_labels,
                                   step=1, key="opt_retrain_labels",
                                   help="The watcher (`prefloop retrain --watch`) retrains after this many new "
                                        "judgments.")
    every_minutes = c2.number_input("…or every N minutes", min_value=MIN_RETRAIN_MINUTES,
                                    max_value=float(MAX_RETRAIN_MINUTES),
                                    value=float(options.retrain_every_minutes), step=1.0, key="opt_retrain_minutes",
                                    help="…or after this many minutes, if at least one new judgment arrived.")
    target = c3.number_input("Target judgments (0: none)", min_value=0, value=options.target_judgments, step=100,
                             key="opt_target",
                             help="Annotators' judgments the campaign aims for (probes and imported ones do not "
                                  "count): the overview's progress bar.")
    st.subheader("Guidelines")
    guidelines = st.text_area("Markdown shown to annotators", value=options.guidelines, height=300,
                              key="opt_guidelines")
    # What became of a save (saved, refused, nothing changed) shows right above the button just
    # pressed: at the top of the page or after the form it was out of sight on a page this long.
    feedback = st.container()
    flashed = st.session_state.pop("settings_flash", [])
    for message in flashed:
        feedback.success(message, icon=":material/check:")
    save = st.form_submit_button("Save settings", type="primary")

if save:
    wanted = dict(overlap=int(overlap), max_overlap=int(max_overlap), gold_rate=float(gold_rate),
                  probe_rate=float(probe_rate), strategy=strategy, batch_size=int(batch_size),
                  cold_start=int(cold_start), retrain_every_labels=int(every_labels),
                  retrain_every_minutes=float(every_minutes), target_judgments=int(target), guidelines=guidelines)
    current = asdict(options)
    changes = {k: v for k, v in wanted.items() if current[k] != v}
    saved = st.session_state.get("settings_saved")
    with feedback:
        if not changes and saved and saved[0] == wanted:
            # The second press of a double click carries the values the first one saved: it confirms that
            # save, not "Nothing changed." (its own confirmation may have been lost with the first run).
            if saved[1] not in flashed:
                st.success(saved[1], icon=":material/check:")
        elif not changes:
            st.info("Nothing changed.")
        else:
            message = f"Saved: {', '.join(sorted(changes))}."
            # Remembered before the commit: a click that arrives meanwhile stops this run at its next use of
            # st.session_state, and the confirmation written after the commit was lost with it. Checked
            # against the database (the values must be the saved ones), so a refused save confirms nothing.
            st.session_state["settings_saved"] = (wanted, message)
            context.run_action(lambda session: campaign.update_options(session, settings, actor=actor, **changes),
                               message, flash_key="settings_flash")

st.caption("Overlap applies to comparisons imported from now on (and to those of a file imported again, where it "
           "is higher than theirs); adaptive overlap and the rates apply at once. "
           "Every change is recorded in the audit log.")
