//! A real headless Chromium driven through chromedriver (WebDriver), for
//! the console tests. Debian's `chromium` and `chromium-driver` packages
//! provide both; `scripts/test` installs them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::controlplane::ADMIN_TOKEN;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver plus one browser session. Dropping it kills chromedriver's
/// whole process group (the browser included), so a failed test leaves no
/// Chromium behind.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Browser {
    pub async fn start() -> Browser {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(path).exists(),
                "{path} missing: apt-get install chromium chromium-driver (scripts/test installs them)"
            );
        }
        let mut cmd = Command::new(CHROMEDRIVER);
        // Port 0: chromedriver binds a free port and says which.
        cmd.arg("--port=0");
        // For a hung or failing session: where chromedriver should log.
        if let Ok(path) = std::env::var("APIPROXY_CHROMEDRIVER_LOG") {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            cmd.arg(format!("--log-path={path}.{}-{n}", std::process::id()))
                .arg("--verbose");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut driver = cmd.spawn().expect("spawn chromedriver");
        let port = match started_on(&mut driver) {
            Some(port) => port,
            None => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("chromedriver did not say on which port it listens");
            }
        };
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         "--lang=en-US", "--disable-crash-reporter",
                         "--disable-breakpad", "--no-first-run"],
            }
        });
        let caps = caps.as_object().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no browser session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Browser { client, driver }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Waits (up to 10 s) for the element matching `css` and returns it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} not found: {e}"))
    }

    /// Clicks the element `css`. A page that re-renders a list after a
    /// save may replace the element between finding and clicking it
    /// (a stale element): it is found again, a few times at most.
    pub async fn click(&self, css: &str) {
        for attempt in 1.. {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(e) if attempt < 5 && e.to_string().contains("stale element") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Replaces the value of the input `css` by typing `text`.
    pub async fn fill(&self, css: &str, text: &str) {
        let input = self.find(css).await;
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    /// Runs `script` (a function body; `arguments` as usual) in the page.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls the page until `script` returns true (10 s at most).
    pub async fn wait_until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.js(script).await == json!(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for: {what}\npage text: {}",
                self.js("return document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The accessible name Chromium computes for the element matching
    /// `css`: what a screen reader announces and voice control matches
    /// (WebDriver "Get Computed Label").
    pub async fn accessible_name(&self, css: &str) -> String {
        self.computed(css, "computedlabel").await
    }

    /// The ARIA role Chromium computes for the element matching `css`
    /// (WebDriver "Get Computed Role").
    pub async fn role(&self, css: &str) -> String {
        self.computed(css, "computedrole").await
    }

    async fn computed(&self, css: &str, what: &'static str) -> String {
        let element = self.find(css).await.element_id().to_string();
        let reply = self
            .client
            .issue_cmd(ElementQuery { element, what })
            .await
            .unwrap_or_else(|e| panic!("{what} of {css}: {e}"));
        reply
            .as_str()
            .unwrap_or_else(|| panic!("{what} of {css}: {reply}"))
            .to_owned()
    }

    /// Chooses the option of value `value` in the `<select>` matching `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.find(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("select {value:?} in {css}: {e}"));
    }

    /// At a phone's width (390 px) nothing overflows the viewport
    /// sideways; leaves a screenshot `name` and the window that narrow.
    pub async fn fits_a_phone(&self, name: &str) {
        self.client.set_window_size(390, 844).await.unwrap();
        self.wait_until(
            "fits a phone",
            "return document.documentElement.scrollWidth <= window.innerWidth",
        )
        .await;
        self.screenshot(name).await;
    }

    /// A real key press (down and up) on the focused element.
    pub async fn press(&self, key: Key) {
        let press = KeyActions::new("keyboard".into())
            .then(KeyAction::Down {
                value: char::from(key),
            })
            .then(KeyAction::Up {
                value: char::from(key),
            });
        self.client.perform_actions(press).await.expect("key press");
    }

    /// Signs in through the admin page's form.
    pub async fn sign_in(&self, base: &str) {
        self.goto(&format!("{base}/admin")).await;
        self.submit_admin_token().await;
    }

    /// Submits the admin token on the sign-in form shown.
    pub async fn submit_admin_token(&self) {
        self.fill("#token", ADMIN_TOKEN).await;
        self.click("#login-form button[type=submit]").await;
        self.wait_until(
            "signed in",
            "return !document.getElementById('app-view').hidden",
        )
        .await;
    }

    /// Lets the page open now read the clipboard (WebDriver "Set
    /// Permission", for its origin: call it after `goto`), so that a test
    /// can check what a Copy button put there.
    pub async fn allow_clipboard_read(&self) {
        self.client
            .issue_cmd(SetPermission {
                name: "clipboard-read",
            })
            .await
            .expect("grant clipboard-read");
    }

    /// Text content of the element matching `css`.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    /// Saves a PNG of the viewport under `target/ui-screenshots/`, kept as
    /// a test artifact; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let exe = std::env::current_exe().expect("exe");
        let dir = exe
            .ancestors()
            .nth(3)
            .expect("target dir")
            .join("ui-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }
}

/// A script that is true when the admin page's mapping table lists
/// exactly `prefixes` (comma-separated).
pub fn rows_are(prefixes: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#mappings tbody tr[data-prefix]')]\
         .map(r => r.dataset.prefix).join(',') === '{prefixes}'"
    )
}

/// Visible buttons, links and form fields that a screen reader could not
/// name (no label, no aria-label, no text).
pub const UNLABELLED_CONTROLS: &str = "return [...document.querySelectorAll('button, a[href], input, select, textarea')]\
    .filter(e => !e.closest('[hidden]') && !e.closest('dialog:not([open])'))\
    .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())\
    .map(e => e.outerHTML.slice(0, 80))";

/// The status line's text and the `aria-live` of the region it sits in.
pub const STATUS_LINE: &str = "const s = document.getElementById('status'); \
    const live = s.closest('[aria-live]'); \
    return [s.textContent, live && live.getAttribute('aria-live')]";

/// `POST /session/{id}/permissions` granting `name`: the W3C Permissions
/// extension chromedriver implements.
#[derive(Debug)]
struct SetPermission {
    name: &'static str,
}

impl WebDriverCompatibleCommand for SetPermission {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/permissions",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"descriptor": {"name": self.name}, "state": "granted"});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// `GET /session/{id}/element/{element}/{what}`: a WebDriver command
/// fantoccini has no method for.
#[derive(Debug)]
struct ElementQuery {
    element: String,
    what: &'static str,
}

impl WebDriverCompatibleCommand for ElementQuery {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session.unwrap_or_default();
        base.join(&format!(
            "session/{session}/element/{}/{}",
            self.element, self.what
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::GET, None)
    }
}

/// The port of chromedriver's "started successfully on port N." line
/// (within 20 s); its output is drained to its end so that it never blocks
/// on a full pipe.
fn started_on(driver: &mut Child) -> Option<u16> {
    let stdout = driver.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split_once("started successfully on port ")
                .and_then(|(_, rest)| rest.trim_end_matches('.').parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20)).ok()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group id is chromedriver's PID: this stops it and the
        // browser it started, and nothing else. The `--` matters: procps
        // `kill -KILL -1234` reads `-1234` as options and signals group 4.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}
