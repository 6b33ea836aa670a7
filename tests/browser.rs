//! The dashboard, the API guide's `EventSource.onmessage` example and Swagger UI in a real
//! browser: Debian's Chromium driven over WebDriver (chromedriver + fantoccini) against
//! `hanga serve` with the demo model. `make test` installs `chromium` and `chromium-driver`.
//!
//! Set `HANGA_UPDATE_SCREENSHOTS=1` to write the README's screenshots into
//! `assets/screenshots/` (otherwise they go to the target directory).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Server;
use fantoccini::{Client, ClientBuilder, Locator, elements::Element, key::Key};
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, and a headless Chromium session through it.
struct Browser {
    driver: Child,
    client: Client,
}

impl Browser {
    async fn start(profile: &Path) -> Browser {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the browser tests need Debian's `chromium` and \
                 `chromium-driver` packages (`make test` installs them; or `apt-get install \
                 chromium chromium-driver`)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The flags this machine's Chromium needs as root, offline and headless.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let started = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        Browser { driver, client }
    }

    /// The browser's console since the last call (chromedriver's log endpoint, as Selenium's
    /// `get_log("browser")`): `(level, message)`.
    async fn console(&self) -> Vec<(String, String)> {
        let logs = self.client.issue_cmd(BrowserLog).await.unwrap();
        logs.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or_default().to_owned(),
                    e["message"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Fails on any console error or warning.
    async fn assert_quiet_console(&self, when: &str) {
        let noisy: Vec<_> = self
            .console()
            .await
            .into_iter()
            .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
            .collect();
        assert!(noisy.is_empty(), "console {when}: {noisy:?}");
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls `script` (an expression) until it is truthy (for at most a minute); returns its
    /// value.
    async fn wait_js(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.js(&format!("return {script};")).await;
            if !(value.is_null() || value == false || value == "" || value == 0) {
                return value;
            }
            if started.elapsed() > Duration::from_secs(60) {
                let console = self.console().await;
                panic!("timed out waiting for {what}; console: {console:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
    }

    async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking `{css}`: {e}"));
    }

    async fn screenshot(&self, name: &str) -> image::RgbImage {
        let png = self.client.screenshot().await.unwrap();
        let dir = if std::env::var_os("HANGA_UPDATE_SCREENSHOTS").is_some() {
            common::repo().join("assets/screenshots")
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), &png).unwrap();
        image::load_from_memory(&png).unwrap().to_rgb8()
    }

    async fn close(mut self) {
        self.client.clone().close().await.unwrap();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
    }
}

/// `POST /session/{id}/se/log {"type": "browser"}`: chromedriver's console log.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (poem::http::Method, Option<String>) {
        (
            poem::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

async fn api(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}{path}");
    let request = match method {
        "POST" => client.post(url).json(&body.unwrap_or(Value::Null)),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    };
    request.send().await.unwrap().json().await.unwrap()
}

/// Sets a form field the way a person does: select it all, type the new value.
async fn type_into(browser: &Browser, css: &str, text: &str) {
    let field = browser.find(css).await;
    field.clear().await.unwrap();
    field
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("typing into `{css}`: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_generates_follows_cancels_and_browses_the_gallery() {
    let dir = common::temp_dir("browser-dashboard");
    // A LoRA of the demo model, with civitai trigger words beside it.
    let loras = dir.join("loras");
    common::install_kohya_lora(&loras);
    let server = Server::start(
        &dir,
        &[
            "--preview-interval-ms",
            "0",
            "--loras",
            loras.to_str().unwrap(),
        ],
    );
    let port = server.port;
    // More images than the gallery's first page (48), for its infinite scroll.
    for seed in 0..7 {
        let job = api(
            port,
            "POST",
            "/api/generate",
            Some(json!({"prompt": "filler", "width": 64, "height": 64, "steps": 1, "seed": seed, "num_images": 8})),
        )
        .await;
        assert_eq!(job["status"], "queued", "{job}");
    }
    let started = Instant::now();
    while api(port, "GET", "/api/jobs?status=queued", None).await["jobs"] != json!([])
        || api(port, "GET", "/api/jobs?status=processing", None).await["jobs"] != json!([])
    {
        assert!(started.elapsed() < Duration::from_secs(120), "filler jobs");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::start(&dir.join("profile")).await;
    let page = format!("http://127.0.0.1:{port}/");
    browser.client.goto(&page).await.unwrap();
    browser
        .wait_js("the form", "document.body.dataset.ready")
        .await;
    browser.assert_quiet_console("on load").await;

    // The form is built from the demo model's JSON Schema: its defaults and limits.
    let info = api(port, "GET", "/api/info", None).await;
    let schema = &info["models"][0]["parameters"]["properties"];
    let steps = browser.find("form#generate-form [name=steps]").await;
    assert_eq!(
        steps.prop("value").await.unwrap().unwrap(),
        schema["steps"]["default"].to_string()
    );
    assert_eq!(
        steps.attr("max").await.unwrap().unwrap(),
        schema["steps"]["maximum"].to_string()
    );
    let sampler_options = browser
        .js("return [...document.querySelectorAll('form#generate-form [name=sampler] option')].map(o => o.value)")
        .await;
    for sampler in schema["sampler"]["enum"].as_array().unwrap() {
        assert!(
            sampler_options.as_array().unwrap().contains(sampler),
            "{sampler} in {sampler_options}"
        );
    }

    // A bad value: the server's 422 message appears next to its field.
    type_into(
        &browser,
        "form#generate-form [name=prompt]",
        "a lighthouse at dusk",
    )
    .await;
    type_into(&browser, "form#generate-form [name=width]", "100").await;
    browser.click("button#submit").await;
    let message = browser
        .wait_js(
            "the width error",
            "document.querySelector('.field-error[data-field=width]')?.textContent",
        )
        .await;
    assert!(
        message.as_str().unwrap().contains("multiple of 8"),
        "{message}"
    );
    // Chromium logs every non-2xx fetch as an error; that one, and nothing else.
    let logged = browser.console().await;
    assert!(
        logged.iter().all(|(_, m)| m.contains("status of 422")),
        "console after the 422: {logged:?}"
    );

    // The gallery's first page, then the next one when its end scrolls into view.
    let tiles = "document.querySelectorAll('#gallery .tile').length";
    browser
        .wait_js("the first page", &format!("{tiles} === 48"))
        .await;
    browser
        .js("document.querySelector('#gallery-more').scrollIntoView()")
        .await;
    browser
        .wait_js("the second page", &format!("{tiles} === 56"))
        .await;
    browser.js("window.scrollTo(0, 0)").await;

    // A LoRA from the picker, with its weight and trigger weight.
    browser
        .find("#lora-add")
        .await
        .select_by_value("kohya_style")
        .await
        .unwrap();
    let lora_row = ".lora-row[data-lora-id=kohya_style]";
    type_into(&browser, &format!("{lora_row} [name=weight]"), "0.8").await;
    type_into(
        &browser,
        &format!("{lora_row} [name=trigger_weight]"),
        "0.5",
    )
    .await;

    // Submit with Ctrl+Enter: the job shows its steps with previews, then its image lands in
    // the gallery without a reload.
    type_into(&browser, "form#generate-form [name=width]", "64").await;
    type_into(&browser, "form#generate-form [name=height]", "64").await;
    type_into(&browser, "form#generate-form [name=steps]", "6").await;
    let prompt = browser.find("form#generate-form [name=prompt]").await;
    prompt
        .send_keys(&format!(
            "{}{}",
            char::from(Key::Control),
            char::from(Key::Enter)
        ))
        .await
        .unwrap();
    let job_id = browser
        .wait_js(
            "the job in the queue",
            "document.querySelector('#queue .job')?.dataset.jobId",
        )
        .await;
    let job_id = job_id.as_str().unwrap().to_owned();
    let job = format!("#queue .job[data-job-id='{job_id}']");
    browser
        .wait_js(
            "a preview",
            &format!("document.querySelector(\"{job} img.preview\")?.src.startsWith('data:image/jpeg;base64,')"))
        .await;
    browser
        .wait_js(
            "the job to complete",
            &format!("document.querySelector(\"{job}\")?.dataset.status === 'completed'"),
        )
        .await;
    let progress = browser
        .js(&format!("const p = document.querySelector(\"{job} progress.step-bar\"); return [p.value, p.max];"))
        .await;
    assert_eq!(progress, json!([6, 6]), "the step bar ends full");
    let finished = api(port, "GET", &format!("/api/jobs/{job_id}"), None).await;
    assert_eq!(finished["status"], "completed");
    assert_eq!(finished["params"]["steps"], 6);
    assert_eq!(
        finished["params"]["prompt"], "a lighthouse at dusk, (wine bottle:0.5)",
        "the trigger words at their weight"
    );
    assert_eq!(
        finished["params"]["loras"],
        json!([{"id": "kohya_style", "weight": 0.8, "trigger_weight": 0.5}])
    );
    let filename = finished["images"][0].as_str().unwrap().to_owned();
    browser
        .wait_js(
            "the image in the gallery",
            &format!("document.querySelector(\"#gallery .tile[data-filename='{filename}']\")"),
        )
        .await;
    browser.assert_quiet_console("during a job").await;

    // A queued job is cancelled from its button (a slow job ahead keeps it queued).
    let ahead = api(
        port,
        "POST",
        "/api/generate",
        Some(json!({"prompt": "slow", "width": 512, "height": 512, "steps": 60, "seed": 1})),
    )
    .await;
    browser.click("button#submit").await;
    let queued = browser
        .wait_js(
            "a queued job",
            "document.querySelector('#queue .job[data-status=queued]')?.dataset.jobId",
        )
        .await;
    let queued = queued.as_str().unwrap().to_owned();
    let queued_css = format!("#queue .job[data-job-id='{queued}']");
    browser.click(&format!("{queued_css} button.cancel")).await;
    browser
        .wait_js(
            "the cancelled job",
            &format!("document.querySelector(\"{queued_css}\")?.dataset.status === 'cancelled' || !document.querySelector(\"{queued_css}\")"))
        .await;
    assert_eq!(
        api(port, "GET", &format!("/api/jobs/{queued}"), None).await["status"],
        "cancelled"
    );
    api(
        port,
        "DELETE",
        &format!("/api/jobs/{}", ahead["job_id"].as_str().unwrap()),
        None,
    )
    .await;

    browser
        .js("document.activeElement.blur(); window.scrollTo(0, 0); document.querySelectorAll('.panel').forEach(p => p.scrollTop = 0);")
        .await;
    let wide = browser.screenshot("dashboard.png").await;
    assert_eq!(wide.width(), 1280);

    // The viewer: the image with its parameters; "use these settings" refills the form.
    type_into(
        &browser,
        "form#generate-form [name=prompt]",
        "something else",
    )
    .await;
    browser
        .click(&format!("#gallery .tile[data-filename='{filename}'] img"))
        .await;
    browser
        .wait_js("the viewer", "document.querySelector('dialog#viewer').open")
        .await;
    let shown = browser.find("#viewer-params").await.text().await.unwrap();
    assert!(shown.contains("a lighthouse at dusk"), "{shown}");
    assert!(shown.contains("kohya_style"), "{shown}");
    browser.click("#use-settings").await;
    let refilled = browser
        .js("const f = document.querySelector('form#generate-form'); return [f.prompt.value, f.steps.value, f.seed.value, document.querySelector('#seed-random').checked]")
        .await;
    assert_eq!(
        refilled,
        json!([
            // As typed: the LoRA's trigger words are appended again when it runs.
            "a lighthouse at dusk",
            "6",
            finished["params"]["seed"].to_string(),
            false
        ])
    );
    let lora_weights = browser
        .js(&format!("const r = document.querySelector('{lora_row}'); return r && [r.querySelector('[name=weight]').value, r.querySelector('[name=trigger_weight]').value]"))
        .await;
    assert_eq!(lora_weights, json!(["0.8", "0.5"]));

    // Delete asks once, then the tile and the file are gone.
    browser
        .click(&format!("#gallery .tile[data-filename='{filename}'] img"))
        .await;
    browser.click("#delete-image").await;
    browser.client.accept_alert().await.unwrap();
    browser
        .wait_js(
            "the tile to go",
            &format!("!document.querySelector(\"#gallery .tile[data-filename='{filename}']\")"),
        )
        .await;
    let gone = reqwest::get(format!("http://127.0.0.1:{port}/api/images/{filename}"))
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    browser.assert_quiet_console("after delete").await;

    // A phone's width: one column, nothing wider than the screen.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.client.refresh().await.unwrap();
    browser
        .wait_js("the form", "document.body.dataset.ready")
        .await;
    let overflow = browser
        .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        .await;
    assert_eq!(overflow, 0, "no horizontal scroll at 390 px");
    browser.screenshot("dashboard-phone.png").await;
    browser.close().await;
    drop(server);
}

/// The README's SSE example, verbatim, in a page of the server's origin.
fn readme_onmessage_example() -> String {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    let section = readme
        .split("### Following a job in the browser")
        .nth(1)
        .expect("the README's browser SSE section");
    let code = section.split("```js\n").nth(1).expect("a js block");
    code.split("```").next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_onmessage_example_receives_every_event() {
    let dir = common::temp_dir("browser-onmessage");
    let server = Server::start(&dir, &["--preview-interval-ms", "0"]);
    let port = server.port;
    let browser = Browser::start(&dir.join("profile")).await;
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/health"))
        .await
        .unwrap();
    browser.console().await;
    // A job ahead keeps this one queued while the page connects.
    let ahead = api(
        port,
        "POST",
        "/api/generate",
        Some(json!({"prompt": "slow", "width": 512, "height": 512, "steps": 30, "seed": 1})),
    )
    .await;
    let job = api(
        port,
        "POST",
        "/api/generate",
        Some(json!({"prompt": "followed", "width": 64, "height": 64, "steps": 5, "seed": 3})),
    )
    .await;
    let job_id = job["job_id"].as_str().unwrap();
    let example = readme_onmessage_example();
    browser
        .js(&format!("const jobId = {}; {example}", json!(job_id)))
        .await;
    // Let the page see the job queued, then free the runner.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api(
        port,
        "DELETE",
        &format!("/api/jobs/{}", ahead["job_id"].as_str().unwrap()),
        None,
    )
    .await;
    let started = Instant::now();
    let mut logged = Vec::new();
    while !logged.iter().any(|m: &String| m.contains("\"completed\"")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no terminal event: {logged:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        logged.extend(browser.console().await.into_iter().map(|(_, m)| m));
    }
    // console.log(status, step, total_steps) — chromedriver quotes strings.
    assert!(
        logged.iter().any(|m| m.contains("\"queued\"")),
        "{logged:?}"
    );
    for step in 1..=5 {
        assert!(
            logged
                .iter()
                .any(|m| m.contains(&format!("\"processing\" {step} 5"))),
            "step {step} not received: {logged:?}"
        );
    }
    browser.close().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_tries_out_generate() {
    let dir = common::temp_dir("browser-swagger");
    let server = Server::start(&dir, &[]);
    let port = server.port;
    let browser = Browser::start(&dir.join("profile")).await;
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/docs"))
        .await
        .unwrap();
    browser
        .click("#operations-Jobs-post_api_generate .opblock-summary")
        .await;
    browser
        .click("#operations-Jobs-post_api_generate .try-out__btn")
        .await;
    let body = browser
        .find("#operations-Jobs-post_api_generate textarea.body-param__text")
        .await;
    body.clear().await.unwrap();
    body.send_keys(r#"{"prompt": "from swagger", "width": 64, "height": 64, "steps": 2}"#)
        .await
        .unwrap();
    browser
        .click("#operations-Jobs-post_api_generate .execute")
        .await;
    let status = browser
        .wait_js(
            "the response",
            "document.querySelector('#operations-Jobs-post_api_generate .live-responses-table tbody .response-col_status')?.textContent")
        .await;
    assert_eq!(status.as_str().unwrap().trim(), "202", "{status}");
    let jobs = api(port, "GET", "/api/jobs", None).await;
    assert_eq!(jobs["jobs"][0]["params"]["prompt"], "from swagger");
    browser.close().await;
    drop(server);
}

/// On a server with keys, the dashboard asks for one at its first 401, keeps it, sends it as
/// `Authorization` on its calls and as `?token=` on its streams and images.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_an_api_key_and_uses_it() {
    let dir = common::temp_dir("browser-key");
    let made = Command::new(env!("CARGO_BIN_EXE_hanga"))
        .args(["keys", "create", "--name", "browser", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    let key = String::from_utf8(made.stdout).unwrap().trim().to_owned();
    let server = Server::start(&dir, &[]);
    let port = server.port;
    let browser = Browser::start(&dir.join("profile")).await;
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    let started = Instant::now();
    let asked = loop {
        match browser.client.get_alert_text().await {
            Ok(text) => break text,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no key prompt: {e}"),
        }
    };
    assert!(asked.contains("API key"), "{asked}");
    browser.client.send_alert_text(&key).await.unwrap();
    browser.client.accept_alert().await.unwrap();
    browser
        .wait_js("the form", "document.body.dataset.ready")
        .await;

    // A job queued from the page arrives in its gallery, the thumbnail loaded with the token.
    type_into(&browser, "form#generate-form [name=prompt]", "a keyed cat").await;
    type_into(&browser, "form#generate-form [name=width]", "64").await;
    type_into(&browser, "form#generate-form [name=height]", "64").await;
    type_into(&browser, "form#generate-form [name=steps]", "1").await;
    browser.click("button#submit").await;
    let src = browser
        .wait_js(
            "a loaded gallery thumbnail",
            "[...document.querySelectorAll('#gallery .tile img')].find(i => i.complete && i.naturalWidth > 0)?.src",
        )
        .await;
    assert!(src.as_str().unwrap().contains("token=hk_"), "{src}");
    assert_eq!(
        browser
            .js("return localStorage.getItem('hanga.apiKey')")
            .await,
        key
    );
    browser.close().await;
}
