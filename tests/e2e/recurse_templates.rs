//! `file.recurse` with `template: jinja` on a real master and agent: each
//! text file of the tree's directory rendered by the master for the agent
//! (its id, its facts, vars.yaml, the state's `defaults`/`context`), sent
//! rendered, applied; a second apply changes nothing.

use halite_e2e::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_recurse_renders_each_file_for_the_agent() {
    let files = [
        ("vars.yaml", "'*': {greeting: hello}\n"),
        ("files/site/index.html", "<h1>{{ vars.greeting }} from {{ id }}</h1>\n"),
        ("files/site/conf/app.conf", "port = {{ port }}\nlisten = {{ listen }}\n"),
        (
            "site.yaml",
            "site:\n  file.recurse:\n    name: /srv/site\n    source: salt://files/site\n    makedirs: true\n    template: jinja\n    defaults: {port: 80, listen: 0.0.0.0}\n    context: {port: 8080}\n",
        ),
    ];
    let fleet = Fleet::start_custom(&["web01"], &["*"], &files).await.unwrap();
    let result = async {
        let first = fleet.master_command(&["apply", "web01", "site", "--json"]).await?;
        anyhow::ensure!(first.code == 0, "{first:?}");
        let json = first.json()?;
        anyhow::ensure!(json["agents"][0]["states"][0]["outcome"] == "changed", "{json}");
        let agent = fleet.agent("web01");
        anyhow::ensure!(std::fs::read_to_string(agent.path("/srv/site/index.html"))? == "<h1>hello from web01</h1>\n");
        anyhow::ensure!(
            std::fs::read_to_string(agent.path("/srv/site/conf/app.conf"))? == "port = 8080\nlisten = 0.0.0.0\n"
        );
        let second = fleet.master_command(&["apply", "web01", "site", "--json"]).await?;
        let json = second.json()?;
        anyhow::ensure!(json["agents"][0]["states"][0]["outcome"] == "unchanged", "{json}");
        anyhow::Ok(())
    }
    .await;
    if let Err(error) = result {
        fleet.fail(&error);
    }
}
